"""The HTML selection report."""
