"""What a hostile or careless user puts in an entity file.

Every injection payload targets the canary table `public.fuzz_canary` or creates
`public.fuzz_pwned`, or (for psql meta-commands) touches PWNED_MARKER: the apply check
looks for exactly these, so a payload that got through is seen, not guessed at.
"""

from __future__ import annotations

# Relative: psql runs in the case's folder, and a file name cannot hold a "/".
PWNED_MARKER = "specql-fuzz-pwned"
CANARY = "public.fuzz_canary"

# (class, text). The class names the mutation kind (e.g. "newline_inject@name").
STRINGS: list[tuple[str, str]] = [
    ("newline_inject", "x\nDROP TABLE IF EXISTS public.fuzz_canary;\n--"),
    ("cr_inject", "x\rDROP TABLE IF EXISTS public.fuzz_canary;\r--"),
    ("create_inject", "x\nCREATE TABLE public.fuzz_pwned (x int);\n--"),
    ("quote_inject", "x'; DROP TABLE IF EXISTS public.fuzz_canary; --"),
    ("dquote_inject", 'x"; DROP TABLE IF EXISTS public.fuzz_canary; --'),
    ("dollar_inject", "x$$; DROP TABLE IF EXISTS public.fuzz_canary; --$$"),
    ("specql_dollar_inject", "x$specql$; DROP TABLE IF EXISTS public.fuzz_canary; --$specql$"),
    ("comment_inject", "x*/ DROP TABLE IF EXISTS public.fuzz_canary; /*"),
    ("psql_meta", f"x\n\\! touch {PWNED_MARKER}\n"),
    ("backslash", "a\\b\\"),
    ("nul", "a\x00b"),
    ("control", "a\x01\x07\x1b[31mb\x7f"),
    ("newline", "a\nb"),
    ("cr", "a\rb"),
    ("tab", "a\tb"),
    ("line_separator", "a\u2028b\x85c"),
    ("unicode", "ünïcødé_名前"),
    ("bidi", "a\u202eb\u200bc"),
    ("emoji", "😀"),
    ("surrogate", "a\ud800b"),
    ("long_100k", "a" * 100_000),
    ("long_ident_64", "a" * 64),
    ("long_ident_multibyte", "ä" * 32),
    ("empty", ""),
    ("space", " "),
    ("reserved_select", "select"),
    ("reserved_order", "order"),
    ("reserved_end", "end"),
    ("pg_evil", "pg_evil"),
    ("pg_catalog", "pg_catalog"),
    ("pg_toast", "pg_toast"),
    ("information_schema", "information_schema"),
    ("specql", "specql"),
    ("public", "public"),
    ("percent", "%s %d %% {x} {{"),
    ("placeholder", "{processed_records}{"),
    ("system_column", "ctid"),
    ("dotted", "a.b"),
    ("upper", "MixedCase"),
    ("quote", "it's \"q\""),
]

# Conditions, preconditions and {sql: ...} values: SQL a user might write, or an attacker.
SQL_FRAGMENTS: list[tuple[str, str]] = [
    ("sql_not_boolean", "7"),
    ("sql_string", "'x'"),
    ("sql_null", "NULL"),
    ("sql_statement_inject", "true; DROP TABLE public.fuzz_canary"),
    ("sql_positional", "id = ANY($1)"),
    ("sql_unterminated_ident", '"unterminated'),
    ("sql_unterminated_string", "'unterminated"),
    ("sql_line_comment", "1 = 1 -- comment\nOR true"),
    ("sql_block_comment", "true /* c */"),
    ("sql_close_comment", "*/"),
    ("sql_dollar", "$$"),
    ("sql_sleep", "pg_sleep(100) IS NOT NULL"),
    ("sql_subquery", "(SELECT count(*) FROM pg_class) > 0"),
    ("sql_aggregate", "COUNT(*) > 0"),
    ("sql_or_true", "id = ANY(:ids) OR true"),
    ("sql_colon", ":"),
    ("sql_colon_number", ":1 = 1"),
    ("sql_cast_param", ":a::text = 'x'"),
    ("sql_canary", "id IN (SELECT x FROM public.fuzz_canary)"),
    ("sql_unknown_function", "current_user_has_permission('x')"),
    ("sql_interval_overflow", "now() + interval '9999999999999 hours' > now()"),
    ("sql_param_like_table", "status = :status"),
    ("sql_nul", "true\x00"),
    ("sql_deep", "(" * 2000 + "true" + ")" * 2000),
    ("sql_long_in", "id IN (" + ", ".join(str(i) for i in range(5000)) + ")"),  # linear: 20,000 take 3 s
]

INTERVALS: list[tuple[str, str]] = [
    ("interval_overflow", "9999999999999 hours"),
    ("interval_zero", "0 seconds"),
    ("interval_negative", "-1 minutes"),
    ("interval_float", "1e308 seconds"),
    ("interval_nan", "NaN"),
    ("interval_infinity", "infinity"),
    ("interval_inject", "1 hour'; DROP TABLE public.fuzz_canary; --"),
    ("interval_century", "1000000 years"),
    ("interval_days", "99999 days"),
    ("interval_newline", "1 hour\n"),
    ("interval_unit", "5 fortnights"),
]

NUMBERS: list[tuple[str, object]] = [
    ("num_zero", 0),
    ("num_negative", -1),
    ("num_int32", 2**31),
    ("num_int64", 2**63),
    ("num_huge", 10**100),
    ("num_float", 1.5),
    ("num_inf", float("inf")),
    ("num_nan", float("nan")),
    ("num_bool", True),
]

FIELD_TYPES: list[tuple[str, str]] = [
    ("type_varchar", "varchar(10)"),
    ("type_array", "text[]"),
    ("type_inject", "integer; DROP TABLE public.fuzz_canary"),
    ("type_upper", "UUID"),
    ("type_serial", "serial"),
]

# Keys of a pattern whose value is SQL text.
SQL_KEYS = {"where_condition", "preconditions", "sql"}
INTERVAL_KEYS = {"timeout", "heartbeat_interval"}
NUMBER_KEYS = {"batch_size", "max_errors", "max_records", "progress_notification_interval", "max_workers",
               "worker_batch_size", "max_errors_per_worker"}
