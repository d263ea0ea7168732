"""A tiny model zoo: one base and several skill specialists fine-tuned from it."""
