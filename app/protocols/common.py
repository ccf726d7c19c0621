"""What ``app/api/routes.py`` takes from the protocols (their entry is the OIP codec's)."""

from app.protocols.oip.codec import check_model_name

__all__ = ["check_model_name"]
