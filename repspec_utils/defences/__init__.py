"""The field's other defences as registered methods: adversarial training (PGD-AT, AR-AT, LSP-style), transfer regularizers (L2-SP, BSS) and Barlow Twins."""
