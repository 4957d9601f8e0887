"""HTTP handlers, one module per resource. Each module exports ``routes``."""
