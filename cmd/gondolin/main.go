// Command gondolin runs untrusted commands in disposable Linux micro-VMs.
package main

import (
	"os"

	"github.com/gondolin/gondolin/cmd/gondolin/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:]))
}
