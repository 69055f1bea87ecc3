"""A 3GPP link-layer world on Sionna SYS that drives the scheduling service slot by slot.

TR 38.901 hexagonal multicell drops (``topology``), the 38.901 system-level channel sampled per
PRB and per slot (``channel``), Sionna's PHY abstraction, outer-loop link adaptation and HARQ
(``link``), the TS 38.214 transport block size of ``service.tbs`` (``tbs``), the carrier
numerology (``carrier``), the traffic (``traffic``), the per-slot loop (``world``) and the
comparison with Sionna's own PF scheduler (``bench``, ``gnbsched bench sionna``).

Needs the ``sionna`` extra (``pip install -e '.[sionna]'``: sionna-no-rt on the train extra's CPU
torch). Nothing here is imported at the top level of a module the service imports: ``gnbsched
simulate --world sionna`` and ``gnbsched bench sionna`` load it by import string. The modules
import torch and Sionna inside the functions that need them, so that ``import
trainer.sionna_world.<module>`` stays cheap until a world is built.
"""
