from vidx.cli import main

main()
