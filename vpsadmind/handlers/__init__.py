"""Transaction handlers, one class per v2.0 type code."""

from vpsadmind.handlers.base import HANDLERS, Handler, HandlerContext, Outcome, handler

__all__ = ["HANDLERS", "Handler", "HandlerContext", "Outcome", "handler"]
