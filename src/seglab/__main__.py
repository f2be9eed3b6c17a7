"""``python -m seglab`` (so ``torchrun -m seglab train ...`` works)."""
from .cli import main

main()
