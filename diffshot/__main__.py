"""``python -m diffshot``: the same CLI as the ``diffshot`` console script."""

from diffshot.entry import main

main()
