"""Shipped model configs (JSON), read with fgresq_sdk.config.load_config."""
