"""The receipts processor service: OTLP in (gRPC and HTTP), receipts rebuilt and stored durably, a query API and pages.

Run it with `unhardcoded processor`; query it from Python with :class:`ProcessorSource`.
"""

from .client import ProcessorError, ProcessorSource
from .service import Backpressure, ProcessorConfig, ProcessorEngine

__all__ = ["Backpressure", "ProcessorConfig", "ProcessorEngine", "ProcessorError", "ProcessorSource"]
