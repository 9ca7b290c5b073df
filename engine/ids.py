"""Ids in one canonical form across files and formats: ``1000398``, ``1000398.0`` and ``"1000398"`` are one id
(int64, or text when the run's ids are not all numbers); a fractional, empty or out-of-range id is bad.

Its own module, free of dask: the ingest, the feedback loop, the catalogue and the merchandising file all read ids
this way, and the stages after the ETL import it without loading dask.dataframe (~0.6 s per process)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

IdDtype = Literal["int64", "string"]

INT64_MAX_DIGITS = str(np.iinfo(np.int64).max)
INTEGRAL_DECIMAL = r"^(-?\d+)\.0+$"  # "1000398.0", the text of an integral float: the id 1000398


def _plain_values(values: pd.Series) -> pd.Series:
    """A categorical column as its values' dtype (nullable integers keep their nulls)."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        return values
    inner = values.cat.categories.dtype
    if pd.api.types.is_integer_dtype(inner):
        return values.astype("Int64")
    return values.astype("float64" if pd.api.types.is_float_dtype(inner) else "string")


def _text_as_int64(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Whole numbers written as text (digits, optional sign; "1.0" already made "1") -> (int64, ok), exactly:
    never through float64, which rounds ids above 2**53."""
    whole = text.str.fullmatch(r"[+-]?\d+").fillna(False).astype(bool)
    digits = text.str.replace(r"^[+-]?0*", "", regex=True).fillna("")
    fits = (digits.str.len() < len(INT64_MAX_DIGITS)) | (
        (digits.str.len() == len(INT64_MAX_DIGITS)) & (digits <= INT64_MAX_DIGITS))
    ok = whole & fits.fillna(False).astype(bool)
    return text.where(ok, "0").astype("int64"), ok


def canonical_ids(values: pd.Series, id_dtype: IdDtype) -> tuple[pd.Series, pd.Series]:
    """Ids in the run's canonical form (int64, or the "string" dtype) and the mask of bad ids (bool, same index).

    Integers and integral floats are numbers: int64, or their digits as text. Text is stripped and a trailing
    ".0" after digits dropped; in int64 form it must then be a whole number. Bad: null, empty text, a float that is
    not integral or not finite, a number outside int64, a bool. The values of bad ids are placeholders."""
    values = _plain_values(values)
    if pd.api.types.is_bool_dtype(values.dtype):
        ok = pd.Series(False, index=values.index)
        ints = pd.Series(0, index=values.index, dtype="int64")
    elif values.dtype == np.int64:  # the common case: nothing to convert, nothing missing
        ok = pd.Series(np.ones(len(values), dtype=bool), index=values.index)
        ints = values
    elif pd.api.types.is_integer_dtype(values.dtype):
        ok = values.notna().astype(bool)
        if pd.api.types.is_unsigned_integer_dtype(values.dtype):
            ok &= (values.fillna(0) <= np.iinfo(np.int64).max).astype(bool)
        ints = pd.Series(values.to_numpy(dtype="int64", na_value=0) if pd.api.types.is_signed_integer_dtype(
            values.dtype) else values.where(ok, 0).astype("int64"), index=values.index)
    elif pd.api.types.is_float_dtype(values.dtype):
        numbers = values.astype("float64")
        ok = numbers.notna() & np.isfinite(numbers) & (numbers == np.floor(numbers)) & (numbers.abs() < 2.0**63)
        ints = numbers.where(ok, 0).astype("int64")
    else:
        text = values.astype("string").str.strip()
        decimal = text.str.contains(".", regex=False).fillna(False).astype(bool)
        if decimal.any():  # the regex only where it can match: most logs have no "." in their ids
            text = text.where(~decimal, text.str.replace(INTEGRAL_DECIMAL, r"\1", regex=True))
        if id_dtype == "string":
            bad = (text.isna() | (text == "")).fillna(True).astype(bool)
            return text, bad
        ints, ok = _text_as_int64(text)
    if id_dtype == "string":
        return ints.astype("string"), ~ok
    return ints, ~ok
