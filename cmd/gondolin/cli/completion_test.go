package cli

import (
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestCompletionCoversCommands: every command whose first argument is a
// session, snapshot or image completes it, and every flag naming one
// completes its value; a command added later without completion fails
// here rather than in a user's shell.
func TestCompletionCoversCommands(t *testing.T) {
	root := newRoot()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if fields := strings.Fields(c.Use); len(fields) > 1 && c != root {
			arg := strings.TrimSuffix(fields[1], "...")
			if slices.Contains([]string{"ID", "SESSION", "SNAP", "REF", "SRC"}, arg) && c.ValidArgsFunction == nil {
				t.Errorf("%s: its %s argument does not complete", c.CommandPath(), arg)
			}
		}
		for name := range flagCompletions {
			if c.LocalFlags().Lookup(name) == nil {
				continue
			}
			if _, ok := c.GetFlagCompletionFunc(name); !ok {
				t.Errorf("%s --%s does not complete", c.CommandPath(), name)
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)

	for path := range argCompletions {
		if subcommand(root, strings.Fields(path)) == nil {
			t.Errorf("argCompletions names %q, which is no command", path)
		}
	}
}

func TestCompletions(t *testing.T) {
	choices := []choice{
		{value: "dev", desc: "live, default:latest", alias: "0123456789ab"},
		{value: "0123456789ab", desc: "live, default:latest", alias: "dev"},
		{value: "fedcba987654", desc: "stale, default:latest"},
	}
	tests := []struct {
		given []string
		want  []cobra.Completion
	}{
		{nil, []cobra.Completion{
			"dev\tlive, default:latest (0123456789ab)",
			"0123456789ab\tlive, default:latest (dev)",
			"fedcba987654\tstale, default:latest",
		}},
		{[]string{"dev"}, []cobra.Completion{"fedcba987654\tstale, default:latest"}},
		{[]string{"0123456789ab"}, []cobra.Completion{"fedcba987654\tstale, default:latest"}},
		{[]string{"fedcba987654", "x"}, []cobra.Completion{
			"dev\tlive, default:latest (0123456789ab)",
			"0123456789ab\tlive, default:latest (dev)",
		}},
	}
	for _, tt := range tests {
		if got := completions(choices, tt.given); !slices.Equal(got, tt.want) {
			t.Errorf("given %q:\n got %q\nwant %q", tt.given, got, tt.want)
		}
	}
}

func TestCompletable(t *testing.T) {
	for v, want := range map[string]bool{
		"dev": true, "a.b_c-1": true, "default:latest": true, "": false,
		"two words": false, "tab\there": false, "nl\n": false, "\x1b]52;c;AAAA\x07": false,
		"line\u2028sep": false, "rtl\u202e": false, "nbsp\u00a0": false,
	} {
		if got := completable(v); got != want {
			t.Errorf("completable(%q) = %v, want %v", v, got, want)
		}
	}
	if got := describe("live", "", "lab\tel\x1b[31m\n"); got != `live, lab\x09el\x1b[31m\x0a` {
		t.Errorf("describe: %q", got)
	}
}

func TestNamed(t *testing.T) {
	got := named("dev", "0123456789ab", "d", "")
	if len(got) != 2 || got[0].value != "dev" || got[1].value != "0123456789ab" {
		t.Errorf("named, name first: %+v", got)
	}
	if got := named("dev", "0123456789ab", "d", "01"); len(got) != 1 || got[0].value != "0123456789ab" || got[0].alias != "dev" {
		t.Errorf("named with an ID prefix: %+v", got)
	}
	if got := named("bad name", "0123456789ab", "d", ""); len(got) != 1 || got[0].alias != "" {
		t.Errorf("a name that is not one word is not offered, nor shown as an alias: %+v", got)
	}
}
