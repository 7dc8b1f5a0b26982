"""On-policy synthetic preference generation for SSO: principles, contrastive sampling, filters, resumable output."""

from .arguments import GenerateArguments
from .generator import SSOGenerator, generate


__all__ = ["GenerateArguments", "SSOGenerator", "generate"]
