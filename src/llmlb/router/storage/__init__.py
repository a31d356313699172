"""The router's database: engine, tables, schema and migrations, revisions."""
