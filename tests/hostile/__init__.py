"""Broken and malicious input, one small fixture each: every refusal must name what was wrong,
and leave the store byte for byte as it was (schema included)."""
