package cli

import (
	"bufio"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeCommands: every gondolin command line in the README's sh
// blocks names a command that exists, with flags it has, values they
// accept and the arguments it takes, as this build parses them. (Running
// them would need sessions, images and a network; the tests of each
// command do that.)
func TestReadmeCommands(t *testing.T) {
	lines := readmeCommands(t, "../../../README.md")
	if len(lines) < 50 {
		t.Fatalf("found %d gondolin command lines in the README: the extraction broke", len(lines))
	}
	for _, line := range lines {
		if err := checkCommandLine(line.args[1:]); err != nil {
			t.Errorf("README line %d: %q: %v", line.n, line.text, err)
		}
	}
	// The check itself: lines it must refuse.
	for _, bad := range [][]string{
		{"frobnicate"},
		{"exec", "--no-such-flag", "--", "true"},
		{"exec", "--timeout", "soon", "--", "true"},
		{"attach"},
		{"list", "extra"},
		{"image", "tag", "only-one"},
		{"cp", "a", "b"},
	} {
		if checkCommandLine(bad) == nil {
			t.Errorf("gondolin %q passed the check", bad)
		}
	}
}

// checkCommandLine parses args as gondolin would, up to running it: the
// command, its flags and its arguments.
func checkCommandLine(args []string) error {
	root := newRoot()
	root.InitDefaultVersionFlag()
	root.InitDefaultCompletionCmd()
	c, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	c.InitDefaultHelpFlag()
	if err := c.ParseFlags(rest); err != nil {
		return err
	}
	if help, _ := c.Flags().GetBool("help"); help || c.Args == nil {
		return nil
	}
	return c.Args(c, c.Flags().Args())
}

type readmeLine struct {
	n    int
	text string
	args []string
}

var (
	// [--json | -q] reads as its first choice, [--all] as --all.
	alternatives = regexp.MustCompile(`\[([^\]|]*?)\s*\|[^\]]*\]`)
	optional     = regexp.MustCompile(`\[([^\]]*)\]`)
	// Where one command of a shell line ends.
	separators = regexp.MustCompile(`\s(?:&&|\|\||\||;)\s`)
)

// readmeCommands returns the gondolin commands in the sh blocks of the
// README at path, split into words as the shell would (quotes removed,
// variables left as written).
func readmeCommands(t *testing.T, path string) []readmeLine {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []readmeLine
	inSh := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		switch {
		case strings.HasPrefix(text, "```"):
			inSh = !inSh && strings.TrimPrefix(text, "```") == "sh"
			continue
		case !inSh:
			continue
		}
		line := stripComment(text)
		line = alternatives.ReplaceAllString(line, "$1")
		line = optional.ReplaceAllString(line, "$1")
		for _, cmd := range separators.Split(line, -1) {
			words := shellWords(cmd)
			for len(words) > 0 && strings.Contains(words[0], "=") && !strings.HasPrefix(words[0], "-") {
				words = words[1:] // VAR=value before the command
			}
			if len(words) == 0 || words[0] != "gondolin" {
				continue
			}
			for i, w := range words { // a redirection ends the arguments
				if w == ">" || w == "<" || w == "2>" {
					words = words[:i]
					break
				}
			}
			out = append(out, readmeLine{n: n, text: strings.TrimSpace(cmd), args: words})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// stripComment drops a shell comment: a # at the start of a word, outside
// quotes.
func stripComment(s string) string {
	var quote rune
	for i, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return s[:i]
		}
	}
	return s
}

// shellWords splits s at unquoted blanks and removes the quotes.
func shellWords(s string) []string {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}
