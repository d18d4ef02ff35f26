"""specql: entity YAML batch_operations -> PL/pgSQL."""
__version__ = "0.1.0"
