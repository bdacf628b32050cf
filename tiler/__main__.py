from tiler.cli import main

main()
