"""DuckDB views and canned queries over exports and stores."""
