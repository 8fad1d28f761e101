package netpolicy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestParseGitCommand(t *testing.T) {
	ok := []struct {
		in, prog, path string
	}{
		// What git sends: the path in single quotes (sq_quote).
		{"git-upload-pack 'org/repo.git'", "git-upload-pack", "org/repo.git"},
		{"git-receive-pack '/org/repo.git'", "git-receive-pack", "/org/repo.git"},
		{"git-upload-archive 'org/repo.git'", "git-upload-archive", "org/repo.git"},
		{"git-upload-pack '~/repo.git'", "git-upload-pack", "~/repo.git"},
		{"git-upload-pack 'my repo.git'", "git-upload-pack", "my repo.git"},
		{"git-upload-pack 'dépôt/ünï.git'", "git-upload-pack", "dépôt/ünï.git"},
		{"git-upload-pack 'Ελληνικά/日本語/कि.git'", "git-upload-pack", "Ελληνικά/日本語/कि.git"},
		// Unquoted, and JGit's ~user/'path'.
		{"git-upload-pack org/repo.git", "git-upload-pack", "org/repo.git"},
		{"git-upload-pack ~alice/'repo.git'", "git-upload-pack", "~alice/repo.git"},
		{"git-upload-pack a''b", "git-upload-pack", "ab"},
		{"git-receive-pack 'a-b_c+d@e:f,g%h=i'", "git-receive-pack", "a-b_c+d@e:f,g%h=i"},
	}
	for _, tt := range ok {
		t.Run(tt.in, func(t *testing.T) {
			c, err := parseGitCommand(tt.in)
			if err != nil || c.Program != tt.prog || c.Path != tt.path {
				t.Fatalf("= %+v, %v; want %s %q", c, err, tt.prog, tt.path)
			}
			back, err := parseGitCommand(c.String())
			if err != nil || back != c {
				t.Errorf("String() %q parses as %+v, %v", c.String(), back, err)
			}
		})
	}
	bad := []struct {
		in, why string
	}{
		{"sh -i", "not one of git's commands"},
		{"sh -c id", "not one of git's commands"},
		{"nc 10.0.0.5 5432", "not one of git's commands"},
		{"git upload-pack 'org/repo'", "not one of git's commands"},
		{"/usr/bin/git-upload-pack 'org/repo'", "not one of git's commands"},
		{"GIT_DIR=/ git-upload-pack 'org/repo'", "not one of git's commands"},
		{"git-lfs-authenticate 'org/repo' download", "not one of git's commands"},
		{"git-upload-pack\t'org/repo'", "not one of git's commands"},
		{"", "not one of git's commands"},
		{"git-upload-pack", "no repository path"},
		{"git-upload-pack ", "no repository path"},
		{"git-upload-pack 'org/repo'; sh", `';' outside quotes`},
		{"git-upload-pack 'org/repo';sh", `';' outside quotes`},
		{"git-upload-pack 'org/repo' && sh", "more than one argument"},
		{"git-upload-pack 'org/repo'&&sh", `'&' outside quotes`},
		{"git-upload-pack 'org/repo'|sh", `'|' outside quotes`},
		{"git-upload-pack 'org/repo'\nsh", `'\n' outside quotes`},
		{"git-upload-pack 'org/repo'\rsh", `'\r' outside quotes`},
		{"git-upload-pack 'org/repo'>/tmp/x", `'>' outside quotes`},
		{"git-upload-pack <x", `'<' outside quotes`},
		{"git-upload-pack `sh`", "'`' outside quotes"},
		{"git-upload-pack $(sh)", `'$' outside quotes`},
		{"git-upload-pack $HOME/x", `'$' outside quotes`},
		{"git-upload-pack \"org/repo\"", `'"' outside quotes`},
		{"git-upload-pack repo*", `'*' outside quotes`},
		{"git-upload-pack repo?", `'?' outside quotes`},
		{"git-upload-pack [r]epo", `'[' outside quotes`},
		{"git-upload-pack {a,b}", `'{' outside quotes`},
		{"git-upload-pack repo#x", `'#' outside quotes`},
		{"git-upload-pack (repo)", `'(' outside quotes`},
		{"git-upload-pack 'org/repo\x00'", "control character"},
		{"git-upload-pack org/repo\x00", `'\x00' outside quotes`},
		{"git-upload-pack 'a\nb'", "control character"},
		{"git-upload-pack 'a\x1b[31mb'", "control character"},
		{"git-upload-pack 'a\u0085b'", "control character"},
		{"git-upload-pack '\xff'", "not UTF-8"},
		{"git-upload-pack --upload-pack=x repo", "more than one argument"},
		{"git-upload-pack --upload-pack=x", "starts with -"},
		{"git-upload-pack '--upload-pack=x'", "starts with -"},
		{"git-upload-pack '-'", "starts with -"},
		{"git-upload-pack -- 'repo'", "more than one argument"},
		{"git-upload-pack 'org/repo' extra", "more than one argument"},
		{"git-upload-pack 'org/repo' ", "more than one argument"},
		{"git-upload-pack  'org/repo'", "more than one argument"},
		{"git-upload-pack 'org/repo'\t", "more than one argument"},
		{"git-upload-pack ''", "empty repository path"},
		{"git-upload-pack 'org/repo", "unterminated quote"},
		{"git-upload-pack org/repo'", "unterminated quote"},
		{"git-upload-pack 'a'\\", `backslash other than`},
		{"git-upload-pack 'a'\\n", `backslash other than`},
		{"git-upload-pack 'a\\'b'", "unterminated quote"}, // no escapes inside quotes
		// Read differently by some shell even inside quotes (see
		// TestGitCommandUpstreamShells): fish unescapes \' and \\ there,
		// csh substitutes history for !.
		{`git-upload-pack 'a\'\'';id #'`, `'\\' in the repository path`},
		{`git-upload-pack 'a\'`, `'\\' in the repository path`},
		{`git-upload-pack 'a\\'`, `'\\' in the repository path`},
		{`git-upload-pack 'a\b'`, `'\\' in the repository path`},
		{`git-upload-pack 'it'\''s.git'`, `'\'' in the repository path`},
		{`git-upload-pack 'wow'\!'.git'`, `'!' in the repository path`},
		{`git-upload-pack 'wow!.git'`, `'!' in the repository path`},
		{`git-upload-pack '!!'`, `'!' in the repository path`},
		// Shell syntax, harmless inside quotes but for a wrapper that
		// strips them.
		{"git-upload-pack '$(id)'", `'$' in the repository path`},
		{"git-upload-pack 'a;id'", `';' in the repository path`},
		{"git-upload-pack 'a`id`'", "'`' in the repository path"},
		{"git-upload-pack 'a|id'", `'|' in the repository path`},
		{"git-upload-pack 'a&id'", `'&' in the repository path`},
		{"git-upload-pack 'a>x'", `'>' in the repository path`},
		{"git-upload-pack 'a\"b'", `'"' in the repository path`},
		{"git-upload-pack 'a*'", `'*' in the repository path`},
		{"git-upload-pack 'a#b'", `'#' in the repository path`},
		{"git-upload-pack 'a^b'", `'^' in the repository path`},
		{"git-upload-pack '{a,b}'", `'{' in the repository path`},
		{"git-upload-pack 'a\u00a0b'", `'\u00a0' in the repository path`},
		{"git-upload-pack 'a\u2028b'", `'\u2028' in the repository path`},
		{"git-upload-pack 'a\u202eb'", `'\u202e' in the repository path`},
		{"git-upload-pack '" + strings.Repeat("a", maxGitPath+1) + "'", "longer than"},
	}
	for _, tt := range bad {
		t.Run(tt.in, func(t *testing.T) {
			c, err := parseGitCommand(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.why) {
				t.Fatalf("= %+v, %v; want an error with %q", c, err, tt.why)
			}
		})
	}
}

// shellDialect is how one login shell an upstream sshd may run the
// command with reads quotes and backslashes, as far as it matters here.
type shellDialect struct {
	name string
	// sqEscapes: the bytes a backslash escapes inside single quotes
	// (fish: ' and \).
	sqEscapes string
	// doubledQuote: two quotes in a row inside single quotes are a
	// literal one (zsh with RC_QUOTES, rc).
	doubledQuote bool
	// bang: ! substitutes history, even inside single quotes, unless
	// after a backslash (csh, tcsh).
	bang bool
	// noBackslash: a backslash is a plain character outside quotes too
	// (rc).
	noBackslash bool
}

var shellDialects = []shellDialect{
	{name: "sh"}, // and bash, dash, ksh, zsh by default
	{name: "fish", sqEscapes: `'\`},
	{name: "csh", bang: true},
	{name: "zsh-rc_quotes", doubledQuote: true},
	{name: "rc", doubledQuote: true, noBackslash: true},
}

// read splits s into words as the dialect would, and returns the first
// thing it would give a meaning beyond a plain word's, if any: outside
// quotes anything but letters, digits, - and the space between words;
// a history ! anywhere for csh; an unterminated quote.
func (d shellDialect) read(s string) (words []string, syntax string) {
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
			continue
		case c == '\'':
		quoted:
			for i++; ; i++ {
				switch {
				case i == len(s):
					return words, "unterminated quote"
				case s[i] == '\\' && i+1 < len(s) && strings.IndexByte(d.sqEscapes, s[i+1]) >= 0,
					d.bang && s[i] == '\\' && i+1 < len(s) && s[i+1] == '!',
					d.doubledQuote && s[i] == '\'' && i+1 < len(s) && s[i+1] == '\'':
					i++
					w.WriteByte(s[i])
				case d.bang && s[i] == '!':
					return words, "! inside quotes"
				case s[i] == '\'':
					break quoted
				default:
					w.WriteByte(s[i])
				}
			}
		case c == '\\' && !d.noBackslash && i+1 < len(s):
			i++
			w.WriteByte(s[i])
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-':
			w.WriteByte(c)
		default:
			return words, fmt.Sprintf("%q outside quotes", c)
		}
		inWord = true
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, ""
}

// checkUpstreamShells fails unless every shell dialect reads the
// upstream form of c as exactly its program and its path.
func checkUpstreamShells(t *testing.T, from string, c gitCommand) {
	t.Helper()
	up := c.String()
	for _, d := range shellDialects {
		words, syntax := d.read(up)
		if syntax != "" || !slices.Equal(words, []string{c.Program, c.Path}) {
			t.Errorf("%q accepted as %q; upstream %q, read by %s: %q, %s", from, c.Path, up, d.name, words, syntax)
		}
	}
}

// TestGitCommandUpstreamShells: a guest that knows the upstream's login
// shell is fish, csh, or zsh with RC_QUOTES spells its command for that
// shell's quoting; whatever the proxy accepts must still reach every
// shell as the one command and path the proxy checked.
func TestGitCommandUpstreamShells(t *testing.T) {
	for _, cmd := range []string{
		`git-upload-pack 'a\'\'';id #'`,     // fish: a'' then ;id
		`git-upload-pack 'a\'\'';id;'\'\'`,  // the same, quotes balanced for sh
		`git-upload-pack 'a\\'`,             // fish: a\
		`git-upload-pack 'a\'`,              // fish: unterminated
		`git-upload-pack 'x'\!'!'`,          // csh: history
		`git-upload-pack '!-1'`,             // csh: the last command again
		`git-upload-pack 'a'\'''`,           // rc, zsh RC_QUOTES: ''
		`git-upload-pack ''\'';id;'\'''`,    // the same
		`git-upload-pack 'it'\''s'`,         // git's own quoting
		`git-upload-pack a''b`,              // '' the guest's
		`git-upload-pack ~alice/'repo.git'`, // JGit's
		`git-upload-pack 'org/repo.git'`,
		`git-upload-pack 'my repo.git'`,
		`git-upload-pack 'dépôt/ünï.git'`,
	} {
		if c, err := parseGitCommand(cmd); err == nil {
			checkUpstreamShells(t, cmd, c)
		}
	}
}

func TestValidGitProtocol(t *testing.T) {
	for _, v := range []string{"version=2", "version=1", "version=2:object-format=sha256"} {
		if !validGitProtocol(v) {
			t.Errorf("%q refused", v)
		}
	}
	for _, v := range []string{"", "version=2\n", "version=2;id", "$(id)", "a b", "~/x", strings.Repeat("v", 257)} {
		if validGitProtocol(v) {
			t.Errorf("%q passed", v)
		}
	}
}

// shellOutsideQuotes returns the bytes of s that a POSIX shell reads
// outside single quotes (a \x pair counts as its x), independently of
// shellWord, and whether the quotes balance.
func shellOutsideQuotes(s string) (string, bool) {
	var out []byte
	in := false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\'':
			in = !in
		case in:
		case s[i] == '\\' && i+1 < len(s):
			i++
		default:
			out = append(out, s[i])
		}
	}
	return string(out), !in
}

// FuzzParseGitCommand: whatever the guest sends, an accepted command is
// one of git's with one path that is no option and holds only
// gitPathRune characters; outside quotes it used no shell syntax; and
// what goes upstream (String) reads back as the same command, holds no
// backslash, ! or quote but the two around the path, and reads as that
// command and path to every shell dialect.
func FuzzParseGitCommand(f *testing.F) {
	for _, s := range []string{
		"git-upload-pack 'org/repo.git'", "git-receive-pack '/a'\\''b'", "git-upload-archive ~u/'r'",
		"git-upload-pack 'x'; sh", "git-upload-pack --upload-pack=x repo", "sh -i", "git-upload-pack 'a\x00'",
		"git-upload-pack 'a'\\!'b'", "git-upload-pack a''b", "git-upload-pack '-x'", "git-upload-pack $(id)",
		`git-upload-pack 'a\'\'';id #'`, `git-upload-pack 'a\\b'`, "git-upload-pack 'dépôt'",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		c, err := parseGitCommand(cmd)
		if err != nil {
			if c != (gitCommand{}) {
				t.Fatalf("error %v with a result %+v", err, c)
			}
			return
		}
		if !slices.Contains(gitSSHCommands, c.Program) || !strings.HasPrefix(cmd, c.Program+" ") {
			t.Fatalf("%q: program %q", cmd, c.Program)
		}
		if c.Path == "" || len(c.Path) > maxGitPath || c.Path[0] == '-' || !utf8.ValidString(c.Path) || strings.ContainsFunc(c.Path, unicode.IsControl) {
			t.Fatalf("%q: path %q", cmd, c.Path)
		}
		outside, balanced := shellOutsideQuotes(strings.TrimPrefix(cmd, c.Program+" "))
		if !balanced || strings.ContainsAny(outside, " \t\n\r\x00;&|<>()$`\"*?[]{}#\\") {
			t.Fatalf("%q accepted with shell syntax %q outside quotes", cmd, outside)
		}
		up := c.String()
		back, err := parseGitCommand(up)
		if err != nil || back != c {
			t.Fatalf("%q: upstream form %q reads as %+v, %v", cmd, up, back, err)
		}
		if up != back.String() {
			t.Fatalf("%q: String not stable: %q then %q", cmd, up, back.String())
		}
		// The upstream form: the path in plain single quotes, with no
		// backslash, quote or ! in it, which every shell reads alike.
		if up != c.Program+" '"+c.Path+"'" || strings.Count(up, "'") != 2 || strings.ContainsAny(up, `\!`) {
			t.Fatalf("%q: upstream form %q", cmd, up)
		}
		if i := strings.IndexFunc(c.Path, func(r rune) bool { return !gitPathRune(r) }); i >= 0 {
			t.Fatalf("%q: path %q holds %q", cmd, c.Path, c.Path[i:])
		}
		checkUpstreamShells(t, cmd, c)
	})
}
