from iot_flows.cli._main import main

main()
