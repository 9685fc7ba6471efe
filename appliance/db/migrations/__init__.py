"""Alembic migrations for the appliance database, run from Python by appliance.db.migrate."""
