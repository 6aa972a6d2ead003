"""I/O and compute kits of the domain variants.

Each module is copied into the nodes of the variants that use it (`src/<node>/integrations/`),
with `from mixins.` imports rewritten to the node's own mixins package. They are linted,
type-checked and tested here against real services.
"""
