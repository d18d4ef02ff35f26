"""Jinja templates of SQL and tests; shipped inside the wheel as specql.templates."""
