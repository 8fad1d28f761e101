package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gondolin/gondolin/internal/termsafe"
)

// What gondolin prints goes through these helpers, so every table lines
// up the same way and nothing a guest, a registry or a snapshot file
// chose can act on the user's terminal.

// newTable writes aligned columns to stdout; the caller Flushes it. What
// it prints is a supervisor's answer, which may be another machine's (a
// context): no cell of it acts on the terminal.
func newTable() *tabwriter.Writer {
	return tabwriter.NewWriter(&termsafe.Writer{W: os.Stdout}, 0, 0, 2, ' ', 0)
}

// printJSON prints v indented; what a guest or a registry chose cannot
// act on the terminal (see termsafe.JSON).
func printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(termsafe.JSON(b), '\n'))
	return err
}

// printJSONLine prints v as one line, for streams.
func printJSONLine(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(termsafe.JSON(b), '\n'))
	return err
}

// oneLine is err's message on one line, safe to print on a terminal: it
// may quote what a guest said (an agent's error, a console line).
func oneLine(err error) string {
	return termsafe.String(strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ")), " "))
}

// dash stands in for an empty table cell.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanBytes is n in binary units, one decimal: 512B, 1.5KiB, 2.0GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// humanAge is d in its largest whole unit, hours up to two days: 45s,
// 3m, 47h, 2d.
func humanAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
