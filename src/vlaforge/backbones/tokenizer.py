"""A byte-level BPE tokenizer built in code, for tiny random-initialized backbones (no model hub).

Byte-level BPE round-trips any text (unicode included); the merges are learned from a fixed corpus of robot
instructions, so the result is deterministic and common instruction words are single tokens.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

_VERBS = [
    "open", "close", "push", "pull", "pick", "place", "put", "lift", "press", "turn", "slide", "insert",
    "remove", "reach", "grasp", "grab", "move", "stack", "unstack", "rotate", "flip", "sweep", "wipe", "pour",
    "hang", "unplug", "plug", "lock", "unlock", "assemble", "disassemble", "hammer", "dial", "take", "drop",
    "fold", "unfold", "throw", "shoot", "kick", "sweep", "hold", "release", "approach",
]
_OBJECTS = [
    "drawer", "door", "window", "button", "puck", "block", "cube", "peg", "hole", "goal", "target", "box",
    "lid", "bin", "basket", "ball", "shelf", "faucet", "handle", "lever", "coffee", "mug", "cup", "bowl",
    "plate", "stick", "nut", "wall", "hammer", "nail", "dial", "soccer", "basketball", "hoop", "table",
    "laptop", "fridge", "toilet", "seat", "umbrella", "frame", "rack", "wine", "plant", "towel", "cloth",
    "bottle", "can", "sponge", "spoon", "fork", "knife", "gripper", "arm", "object", "robot", "red", "green",
    "blue", "yellow", "left", "right", "top", "bottom", "side", "front", "back",
]
_CORPUS = [f"{v} the {o}" for v in _VERBS for o in _OBJECTS] + [
    "what action should the robot take to", "in: out:", "press the button from the top", "pick up the puck and "
    "place it at the goal", "push the puck to the goal", "reach the goal position", "insert the peg into the hole",
    "open the drawer", "close the drawer", "open the door", "open the window", "close the window",
    "slide the plate into the goal", "turn on the faucet", "pull the handle up", "put the block in the bin",
]


def build_tokenizer(vocab_size: int = 512, extra_special: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE on the built-in corpus; specials are ``<pad> <s> </s>`` plus ``extra_special``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", *extra_special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=512)
