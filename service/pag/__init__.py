"""Protocol action grammar (SPEC §4): checks on raw outputs, masks for generation, repair."""

from service.pag.checks import CheckResult, check, check_dcm, is_valid
from service.pag.mask import masked_decode, pag_mask
from service.pag.repair import repair

__all__ = ["CheckResult", "check", "check_dcm", "is_valid", "masked_decode", "pag_mask", "repair"]
