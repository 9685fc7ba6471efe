"""The appliance's database: SQLAlchemy models, Alembic migrations, engine and session set-up."""
