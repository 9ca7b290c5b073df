"""Optional pseudonymisation of user ids: HMAC-SHA256 with a secret key from the environment, applied at
ingest so raw user ids never reach any file a run writes (quarantine included). The key is read from
``HOMERANK_PSEUDONYM_KEY`` and is never written anywhere; the same key gives the same pseudonyms, so runs
stay joinable by whoever holds it."""

from __future__ import annotations

import hashlib
import hmac
import os

import pandas as pd

from homerank.engine.errors import HomerankError

KEY_VARIABLE = "HOMERANK_PSEUDONYM_KEY"


def pseudonym_key() -> bytes:
    key = os.environ.get(KEY_VARIABLE, "")
    if len(key) < 16:
        raise HomerankError(f"privacy.pseudonymise_user_ids: set {KEY_VARIABLE} to a secret of at least 16 "
                            "characters (it is never written to disk)")
    return key.encode()


def pseudonymise(values: pd.Series, key: bytes) -> pd.Series:
    """'u_' + the first 16 hex digits of HMAC-SHA256(key, str(id)); nulls stay null."""
    def one(value: object) -> object:
        if pd.isna(value):
            return pd.NA
        return "u_" + hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:16]

    return values.map(one).astype("string")
