"""``garrison demo``: a demo run end to end on the embedded default, with a real worker and no server.

``garrison.demo.onboarding`` holds the events seed's onboarding journey (the default demo) and
``garrison.demo.support`` casern's support-inquiry machine (``garrison demo --name support``); the
worker imports the one shown through ``GARRISON_AUTOMATIONS``. ``garrison.demo.runner`` starts the worker,
ingests, and prints what happens, read back from what garrison stored.
"""
