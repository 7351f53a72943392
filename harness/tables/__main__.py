from harness.tables import main

main()
