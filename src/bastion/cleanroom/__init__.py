"""The clean room: differentially private advertising analytics over the engagement events.

Fixed templates, per-user contribution bounding in the engine (DuckDB by default, or Spark),
noise only from OpenDP in one shared release layer, budgets per analyst and organization in the
store, and every query on the ledger before its answer leaves.
"""

from bastion.cleanroom.budget import Budget, BudgetStore
from bastion.cleanroom.config import CleanRoomConfig, Measure
from bastion.cleanroom.engines import (
    BoundedAggregate,
    DuckDBEngine,
    Engine,
    LazyEngine,
    SparkEngine,
    open_engine,
)
from bastion.cleanroom.release import Release, ResultRow, release
from bastion.cleanroom.service import (
    CleanRoom,
    QueryFailed,
    QueryRefused,
    QueryResult,
    default_data_dir,
    open_cleanroom,
)
from bastion.cleanroom.templates import QueryPlan, QueryRequest, Template, compile_plan

__all__ = [
    "BoundedAggregate",
    "Budget",
    "BudgetStore",
    "CleanRoom",
    "CleanRoomConfig",
    "DuckDBEngine",
    "Engine",
    "LazyEngine",
    "Measure",
    "QueryFailed",
    "QueryPlan",
    "QueryRefused",
    "QueryRequest",
    "QueryResult",
    "Release",
    "ResultRow",
    "SparkEngine",
    "Template",
    "compile_plan",
    "default_data_dir",
    "open_cleanroom",
    "open_engine",
    "release",
]
