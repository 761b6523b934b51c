"""GRPO pieces shared by the generator and the LVLM."""
from emojax.rl.grpo import (aggregate_token_loss, clipped_policy_loss, flow_kl,
                            group_advantages, k3_kl, masked_mean)
