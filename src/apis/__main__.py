from apis.cli import main

main()
