"""Jinja2 templates shipped with cocktail-bot (model card, PR comment)."""
