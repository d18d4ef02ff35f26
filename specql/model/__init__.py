"""The checked model of a project: entities, their columns and batch operations.

`build_project` turns loaded documents into `Entity` and `Operation` objects, checking
what the JSON Schema cannot: columns exist, parameter types resolve, SQL fragments parse
as one expression, options agree with each other. Every problem of every file is
collected; the model is only returned when there are none.

One module per concept:

- `entity`    entities, columns, defaults and references
- `values`    literals, what reads as SQL, durations, record fields
- `names`     identifiers checked, names shown safely
- `scope`     an operation's parameters: declared, inferred, ordered
- `context`   reading one pattern's values and SQL fragments
- `statement` the statement per batch: kind, target, condition, values, conflict, driver
- `policy`    transaction and error modes, limits, time-outs, observability
- `operation` the operation: statement + policy + parameters, and flags needing both
- `build`     orchestration: documents in, model (or every problem) out
"""

from .build import build_operation, build_project
from .context import Context
from .entity import Column, Entity, Project
from .names import display_name
from .operation import Operation
from .policy import DEFAULT_BATCH_SIZE, RESULT_FIELDS, Policy, Precondition
from .scope import Param
from .statement import INTEGER_KEY_MAX, Statement
from .values import Assignment, parse_interval

__all__ = [
    "Assignment", "Column", "Context", "DEFAULT_BATCH_SIZE", "Entity", "INTEGER_KEY_MAX", "Operation", "Param",
    "Policy", "Precondition", "Project", "RESULT_FIELDS", "Statement", "build_operation", "build_project",
    "display_name", "parse_interval",
]
