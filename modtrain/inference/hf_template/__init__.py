"""Files copied into every Mixture-of-Depths or Mixture-of-Experts export for Hugging Face
`trust_remote_code`.

They import torch and transformers only (never modtrain): an export must load without
modtrain installed. `modtrain_core` is also modtrain's own inference model.
"""

REMOTE_CODE_FILES = ("configuration_modtrain.py", "modeling_modtrain.py", "modtrain_core.py",
                     "modtrain_experts.py")
