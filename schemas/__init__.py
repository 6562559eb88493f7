"""Event contracts (``contracts/*.avsc``, ``contracts/*.json``) and the code that
loads them and validates events against them.  Pure: no Kafka, no Redis."""

from driftline.schemas.exceptions import REASONS, InvalidEvent, Rejection, SchemaError
from driftline.schemas.loader import build_parser, load_contract
from driftline.schemas.parser import EventParser, ParsedEvent

__all__ = [
    "REASONS",
    "EventParser",
    "InvalidEvent",
    "ParsedEvent",
    "Rejection",
    "SchemaError",
    "build_parser",
    "load_contract",
]
