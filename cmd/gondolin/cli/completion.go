package cli

// Dynamic shell completion. Cobra writes the shell scripts (gondolin
// completion bash|zsh|fish|powershell) and the scripts call back into
// the binary (gondolin __complete WORDS...) for what only this home
// knows: its sessions, snapshots and images. addCompletions attaches
// those answers from this one file, so the command files stay about
// their commands.
//
// A completion runs on every Tab press: it must answer at once and have
// no effect. It never starts the supervisor (with none running, sessions
// complete to nothing), reads snapshots and images from disk, and gives
// up on any source after completionTimeout.

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/snapshots"
)

// completionTimeout bounds each source a completion reads: a shell
// waiting on Tab is worse than a list that comes up empty.
const completionTimeout = 2 * time.Second

// argCompletions completes positional arguments, by command path
// (without "gondolin").
var argCompletions = map[string]cobra.CompletionFunc{
	"attach":            firstArg(liveSessions),
	"stop":              eachArg(stoppableSessions),
	"rm":                eachArg(removableSessions),
	"logs":              firstArg(anySession),
	"inspect":           eachArg(anySession),
	"events":            firstArg(anySession),
	"policy show":       firstArg(liveSessions),
	"policy allow":      firstArg(liveSessions),
	"policy deny":       firstArg(liveSessions),
	"policy secret set": firstArg(liveSessions),
	"policy secret rm":  firstArg(liveSessions),
	"snapshot":          firstArg(liveSessions),
	"snapshot inspect":  firstArg(snapshotRefs),
	"snapshot rm":       eachArg(storedSnapshots),
	"ingress":           completeIngress,
	"image inspect":     firstArg(imageRefs),
	"image tag":         firstArg(imageRefs),
	"image rm":          eachArg(imageRefs),
	"image export":      completeImageExport,
	"image import":      completeDirs,
	"cp":                completeCopy,

	// No arguments, or none on this host: without these the shell
	// would offer the current directory's files.
	"image pull":        cobra.NoFileCompletions,
	"image build":       cobra.NoFileCompletions,
	"image ls":          cobra.NoFileCompletions,
	"snapshot ls":       cobra.NoFileCompletions,
	"list":              cobra.NoFileCompletions,
	"version":           cobra.NoFileCompletions,
	"ui":                cobra.NoFileCompletions,
	"supervisor stop":   cobra.NoFileCompletions,
	"supervisor status": cobra.NoFileCompletions,
}

// flagCompletions completes flag values, by flag name, on every command
// that defines the flag.
var flagCompletions = map[string]source{
	"session": liveSessions,
	"resume":  snapshotRefs,
	"image":   imageRefs,
}

// addCompletions attaches dynamic completion to root's commands. A
// command or flag that already has a completion keeps it: the file that
// defines a command may know better.
func addCompletions(root *cobra.Command) {
	for path, fn := range argCompletions {
		if c := subcommand(root, strings.Fields(path)); c != nil && c.ValidArgsFunction == nil {
			c.ValidArgsFunction = fn
		}
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for name, src := range flagCompletions {
			if c.LocalFlags().Lookup(name) == nil {
				continue
			}
			if _, ok := c.GetFlagCompletionFunc(name); ok {
				continue
			}
			// It fails only for an unknown flag or one completed
			// already, both ruled out above.
			_ = c.RegisterFlagCompletionFunc(name, flagValue(src))
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// subcommand finds the command at path under c, or nil.
func subcommand(c *cobra.Command, path []string) *cobra.Command {
	for _, name := range path {
		i := slices.IndexFunc(c.Commands(), func(sub *cobra.Command) bool { return sub.Name() == name })
		if i < 0 {
			return nil
		}
		c = c.Commands()[i]
	}
	return c
}

// A choice is one word a completion offers.
type choice struct {
	value, desc string
	// alias is the other word for the same thing (a named session's ID,
	// a session's name), so that a thing given once is not offered
	// again under its other word.
	alias string
}

// A source lists the choices for a word that starts with prefix, and
// what the shell should do besides.
type source func(prefix string) ([]choice, cobra.ShellCompDirective)

// completions turns choices into cobra's "value\tdescription" lines,
// leaving out those given already.
func completions(choices []choice, given []string) []cobra.Completion {
	var out []cobra.Completion
	for _, ch := range choices {
		if slices.Contains(given, ch.value) || ch.alias != "" && slices.Contains(given, ch.alias) {
			continue
		}
		desc := ch.desc
		if ch.alias != "" {
			desc += " (" + ch.alias + ")"
		}
		out = append(out, cobra.CompletionWithDesc(ch.value, desc))
	}
	return out
}

// flagValue completes a flag's value from src.
func flagValue(src source) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		choices, dir := src(toComplete)
		return completions(choices, nil), dir
	}
}

// firstArg completes the first positional argument from src, and
// nothing after it.
func firstArg(src source) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		choices, dir := src(toComplete)
		return completions(choices, nil), dir
	}
}

// eachArg completes every positional argument from src, leaving out
// those already given.
func eachArg(src source) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		choices, dir := src(toComplete)
		return completions(choices, args), dir
	}
}

// completable reports whether v can be offered as a word: one that
// prints as itself on a terminal and that a shell takes as one word.
func completable(v string) bool {
	return v != "" && termsafe.String(v) == v && !strings.ContainsFunc(v, unicode.IsSpace)
}

// describe joins the non-empty parts of a description, made safe to
// show: labels may come from anywhere, and a tab or newline in a
// description would break cobra's line protocol.
func describe(parts ...string) string {
	var kept []string
	for _, p := range parts {
		if p != "" {
			kept = append(kept, termsafe.String(p))
		}
	}
	return strings.Join(kept, ", ")
}

// named offers a thing by its name (when it has one) and its ID, those
// of them that start with prefix.
func named(name, id, desc, prefix string) []choice {
	if !completable(name) {
		name = ""
	}
	var out []choice
	if name != "" && strings.HasPrefix(name, prefix) {
		out = append(out, choice{value: name, desc: desc, alias: id})
	}
	if completable(id) && strings.HasPrefix(id, prefix) {
		out = append(out, choice{value: id, desc: desc, alias: name})
	}
	return out
}

// within runs read and gives up on it after completionTimeout (a read
// still blocked then ends with the process, soon after).
func within[T any](read func(ctx context.Context) (T, error)) (T, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	type answer struct {
		v   T
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		v, err := read(ctx)
		ch <- answer{v, err}
	}()
	select {
	case a := <-ch:
		return a.v, a.err == nil
	case <-ctx.Done():
		var zero T
		return zero, false
	}
}

// completionClient is a client of the home's supervisor if one runs.
// It never starts one: that would sweep and adopt VMs, no business of a
// key press.
func completionClient(ctx context.Context) (*sessions.Client, error) {
	home, err := layout.DefaultHome()
	if err != nil {
		return nil, err
	}
	sel, err := selectedContext()
	if err != nil {
		return nil, err
	}
	if sel.Remote() {
		// The far side's dial-stdio --no-start: a shared ssh connection
		// answers within the bound; a first login may not, and then
		// nothing is offered.
		return remoteClient(sel, false), nil
	}
	return sessions.Connect(ctx, home, sessions.ConnectOptions{Start: false})
}

func liveSessions(prefix string) ([]choice, cobra.ShellCompDirective) {
	return sessionRefs(prefix, func(s sessions.State) bool { return s == sessions.Live }), cobra.ShellCompDirectiveNoFileComp
}

// stoppableSessions: stop refuses a session still being created, and
// one stopped already has nothing to stop.
func stoppableSessions(prefix string) ([]choice, cobra.ShellCompDirective) {
	return sessionRefs(prefix, func(s sessions.State) bool { return s == sessions.Live || s == sessions.Stale }), cobra.ShellCompDirectiveNoFileComp
}

// removableSessions: rm refuses a session still being created (and
// takes a live one with -f).
func removableSessions(prefix string) ([]choice, cobra.ShellCompDirective) {
	return sessionRefs(prefix, func(s sessions.State) bool { return s != sessions.Creating }), cobra.ShellCompDirectiveNoFileComp
}

func anySession(prefix string) ([]choice, cobra.ShellCompDirective) {
	return sessionRefs(prefix, func(sessions.State) bool { return true }), cobra.ShellCompDirectiveNoFileComp
}

// sessionRefs offers the names and IDs of the sessions in a state want
// accepts, described by state, image and label. With no supervisor
// running there are none to offer.
func sessionRefs(prefix string, want func(sessions.State) bool) []choice {
	list, _ := within(func(ctx context.Context) ([]sessions.Session, error) {
		client, err := completionClient(ctx)
		if err != nil {
			return nil, err
		}
		return client.List(ctx, true)
	})
	var out []choice
	for _, s := range list {
		if want(s.State) {
			out = append(out, named(s.Name, s.ID, describe(string(s.State), s.Image, s.Label), prefix)...)
		}
	}
	return out
}

// snapshotRefs offers the names and IDs of the home's snapshots (see
// storedSnapshots). A snapshot to read may also be given as its .qcow2
// file: those are offered when what is typed reads as a path, or when
// no snapshot matches.
func snapshotRefs(prefix string) ([]choice, cobra.ShellCompDirective) {
	qcow2 := []choice{{value: "qcow2"}} // the extension, for FilterFileExt
	if snapshots.IsPath(prefix) {
		return qcow2, cobra.ShellCompDirectiveFilterFileExt
	}
	if out, dir := storedSnapshots(prefix); len(out) > 0 {
		return out, dir
	}
	return qcow2, cobra.ShellCompDirectiveFilterFileExt
}

// storedSnapshots offers the names and IDs of the snapshots in the
// home's store, read from disk as snapshot ls does without a
// supervisor. (snapshot rm takes these only: it leaves a disk file
// outside the store to the user.)
func storedSnapshots(prefix string) ([]choice, cobra.ShellCompDirective) {
	list, _ := within(func(context.Context) ([]*snapshots.Snapshot, error) {
		store, err := snapshotStore()
		if err != nil {
			return nil, err
		}
		return store.List()
	})
	var out []choice
	for _, s := range list {
		desc := describe(string(s.Kind)+" snapshot of "+s.Source, s.ImageRef, humanAge(time.Since(s.Created))+" old")
		out = append(out, named(s.Name, s.ID, desc, prefix)...)
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// imageRefs offers the refs (name:tag) of the home's images, and the
// short ID of an image that has none once what is typed starts it.
func imageRefs(prefix string) ([]choice, cobra.ShellCompDirective) {
	images, _ := within(func(context.Context) ([]imagestore.Image, error) {
		if err := hereOnly(); err != nil {
			return nil, err // another machine's images are not read here
		}
		home, err := layout.DefaultHome()
		if err != nil {
			return nil, err
		}
		// Opening a store makes its directories: not for a home that
		// was never used.
		if _, err := os.Stat(home.Images()); err != nil {
			return nil, err
		}
		store, err := imagestore.Open(home.Images())
		if err != nil {
			return nil, err
		}
		return store.List()
	})
	var out []choice
	for _, img := range images {
		id := shortID(img.ID)
		desc := describe(imageSource(img.Manifest), humanAge(time.Since(img.Manifest.Created))+" old")
		refs := slices.DeleteFunc(slices.Clone(img.Refs), func(r string) bool { return !completable(r) })
		if len(refs) == 0 && prefix != "" && strings.HasPrefix(id, prefix) {
			// Old builds pile up untagged: offered once an ID is typed.
			out = append(out, choice{value: id, desc: desc})
		}
		for _, r := range refs {
			if strings.HasPrefix(r, prefix) {
				out = append(out, choice{value: r, desc: desc, alias: id})
			}
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeDirs completes directories.
func completeDirs(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveFilterDirs
}

// completeImageExport: image export REF DIR.
func completeImageExport(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	switch len(args) {
	case 0:
		return firstArg(imageRefs)(c, args, toComplete)
	case 1:
		return completeDirs(c, args, toComplete)
	}
	return nil, cobra.ShellCompDirectiveNoFileComp
}

// completeIngress: ingress ID add [HOST:]PORT[=GUEST_PORT] | rm LISTEN | ls.
func completeIngress(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	var choices []choice
	switch {
	case len(args) == 0:
		return firstArg(liveSessions)(c, args, toComplete)
	case len(args) == 1:
		for _, verb := range []choice{
			{value: "add", desc: "forward a host listener to a guest port"},
			{value: "rm", desc: "remove a route, by its listen address"},
			{value: "ls", desc: "list the routes"},
		} {
			if strings.HasPrefix(verb.value, toComplete) {
				choices = append(choices, verb)
			}
		}
	case len(args) == 2 && args[1] == "rm":
		routes, _ := within(func(ctx context.Context) ([]ingress.Route, error) {
			client, err := completionClient(ctx)
			if err != nil {
				return nil, err
			}
			return client.Routes(ctx, args[0])
		})
		for _, r := range routes {
			if completable(r.Listen) && strings.HasPrefix(r.Listen, toComplete) {
				choices = append(choices, choice{value: r.Listen, desc: fmt.Sprintf("to guest port %d", r.GuestPort)})
			}
		}
	}
	return completions(choices, nil), cobra.ShellCompDirectiveNoFileComp
}

// completeCopy: cp SRC DEST, one side SESSION:PATH (parseCpOperand).
// While neither side names a session, live sessions are offered as
// "NAME:" (the shell adding no space after); host files when none
// matches, when the word reads as a host path, or when the other side
// is the session's already. After the colon the path is the guest's,
// which the host cannot list.
func completeCopy(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	switch {
	case len(args) >= 2:
		return nil, cobra.ShellCompDirectiveNoFileComp
	case parseCpOperand(toComplete).session != "":
		return nil, cobra.ShellCompDirectiveNoFileComp
	case len(args) == 1 && parseCpOperand(args[0]).session != "",
		strings.Contains(toComplete, "/"), strings.HasPrefix(toComplete, "."), strings.HasPrefix(toComplete, "~"):
		return nil, cobra.ShellCompDirectiveDefault
	}
	choices, _ := liveSessions(toComplete)
	if len(choices) == 0 {
		return nil, cobra.ShellCompDirectiveDefault
	}
	for i := range choices {
		choices[i].value += ":"
	}
	return completions(choices, nil), cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
}
