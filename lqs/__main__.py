from lqs.cli import main

main()
