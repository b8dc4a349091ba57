"""Database base, engine, sessions and every service's ORM models."""
