"""The selector's version, recorded in every rendered node's contract and answers."""

SELECTOR_VERSION = "1.0.0"
