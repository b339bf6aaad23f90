"""Talking to Label Studio: its REST API, image downloads, label configs, a local install."""
