"""What operators read: one key's whole story (:mod:`.inspect`), a tenant's figures (:mod:`.stats`),
their rendering as text tables (:mod:`.render`), and schema migrations (:mod:`.migrate`). Read by the CLI,
the HTTP server and the demo; built on the core, never on an interface."""
