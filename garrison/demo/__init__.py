"""``garrison demo``: casern's support-inquiry example, run end to end on the embedded default.

``garrison.demo.support`` holds the machine (the worker imports it through ``GARRISON_AUTOMATIONS``);
``garrison.demo.runner`` starts a real worker, sends and pulses, and prints what happens.
"""
