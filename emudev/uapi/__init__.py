"""The uapi, declared once in YAML (spec/), and what is generated from it."""
