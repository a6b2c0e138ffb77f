# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_backy_global_optspecs
    string join \n v/verbose l/logfile= b/backupdir= h/help V/version
end

function __fish_backy_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_backy_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_backy_using_subcommand
    set -l cmd (__fish_backy_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c backy -n "__fish_backy_needs_command" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_needs_command" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_needs_command" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_needs_command" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_needs_command" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_needs_command" -f -a "init" -d 'Create a job directory and its config (refused if a config exists)'
complete -c backy -n "__fish_backy_needs_command" -f -a "backup" -d 'Make one new revision'
complete -c backy -n "__fish_backy_needs_command" -f -a "restore" -d 'Copy a revision to a file, a block device, or - (stdout)'
complete -c backy -n "__fish_backy_needs_command" -f -a "find" -d 'Print the absolute path of a revision\'s image'
complete -c backy -n "__fish_backy_needs_command" -f -a "status" -d 'Show all revisions'
complete -c backy -n "__fish_backy_needs_command" -f -a "verify" -d 'Check revisions against their checksum manifests'
complete -c backy -n "__fish_backy_needs_command" -f -a "forget" -d 'Delete one revision'
complete -c backy -n "__fish_backy_needs_command" -f -a "distrust" -d 'Mark revisions distrusted: the next backup compares the whole source against such a parent instead of trusting its checksums'
complete -c backy -n "__fish_backy_needs_command" -f -a "protect" -d 'Protect a revision: retention never deletes it, and forget refuses it without --force'
complete -c backy -n "__fish_backy_needs_command" -f -a "unprotect" -d 'Hand a protected revision back to retention'
complete -c backy -n "__fish_backy_needs_command" -f -a "reshare" -d 'After a plain copy of the job directory (cp, rsync): share each revision\'s unchanged blocks with its parent again'
complete -c backy -n "__fish_backy_needs_command" -f -a "export-diff" -d 'Write an `rbd export-diff` (v1) stream that takes an RBD image from one revision to another, to stdout, for `rbd import-diff - POOL/IMAGE`'
complete -c backy -n "__fish_backy_needs_command" -f -a "scheduler" -d 'Run the scheduler daemon in the foreground'
complete -c backy -n "__fish_backy_needs_command" -f -a "check" -d 'Nagios check of all jobs (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)'
complete -c backy -n "__fish_backy_needs_command" -f -a "expire" -d 'Apply the job\'s retention rules now (the scheduler does this after each run)'
complete -c backy -n "__fish_backy_needs_command" -f -a "nbd-server" -d 'Serve the job\'s revisions to NBD clients (nbd-client, qemu-img, nbdcopy, nbdfuse)'
complete -c backy -n "__fish_backy_needs_command" -f -a "send" -d 'Write revisions to stdout as one stream of the blocks that changed, for `receive`'
complete -c backy -n "__fish_backy_needs_command" -f -a "receive" -d 'Read a `send` stream from stdin into this job (created if missing)'
complete -c backy -n "__fish_backy_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c backy -n "__fish_backy_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c backy -n "__fish_backy_using_subcommand init" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand init" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand init" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand init" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c backy -n "__fish_backy_using_subcommand init" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand backup" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand backup" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand backup" -l allow-copy -d 'Where the filesystem cannot reflink, make a full sparse copy of the parent instead of refusing (each revision then costs its full size)'
complete -c backy -n "__fish_backy_using_subcommand backup" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand backup" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand backup" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand restore" -s r -l revision -d 'The revision (see SPEC in the man page)' -r
complete -c backy -n "__fish_backy_using_subcommand restore" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand restore" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand restore" -s f -l force -d 'Overwrite an existing non-empty target file (never a file of the job)'
complete -c backy -n "__fish_backy_using_subcommand restore" -l verify -d 'Check every block against the revision\'s checksum manifest while restoring; stop at the first mismatch (a partial file target is removed)'
complete -c backy -n "__fish_backy_using_subcommand restore" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand restore" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand restore" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand find" -s r -l revision -d 'The revision' -r
complete -c backy -n "__fish_backy_using_subcommand find" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand find" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand find" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand find" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand find" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand status" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand status" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand status" -l json -d 'Print JSON instead of the table'
complete -c backy -n "__fish_backy_using_subcommand status" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand status" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand status" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand verify" -s r -l revision -d 'Only this revision (default: every complete revision, newest first)' -r
complete -c backy -n "__fish_backy_using_subcommand verify" -l sample -d 'Check only this percentage of each revision\'s blocks, chosen at random (at least one); the check is recorded as partial' -r
complete -c backy -n "__fish_backy_using_subcommand verify" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand verify" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand verify" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand verify" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand verify" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand forget" -s r -l revision -d 'The revision' -r
complete -c backy -n "__fish_backy_using_subcommand forget" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand forget" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand forget" -l force -d 'Also delete a protected revision, the newest complete revision, or a damaged revision (unreadable metadata or a missing image, named by its exact id; `status` lists them)'
complete -c backy -n "__fish_backy_using_subcommand forget" -l dry-run -d 'Say which revision would be deleted and how much space that frees; change nothing'
complete -c backy -n "__fish_backy_using_subcommand forget" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand forget" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c backy -n "__fish_backy_using_subcommand forget" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand distrust" -s r -l revision -d 'Only this revision' -r
complete -c backy -n "__fish_backy_using_subcommand distrust" -s f -l from -d 'Only revisions made on or after this UTC day (YYYY-MM-DD) or time' -r
complete -c backy -n "__fish_backy_using_subcommand distrust" -s u -l until -d 'Only revisions made on or before this UTC day (YYYY-MM-DD) or time' -r
complete -c backy -n "__fish_backy_using_subcommand distrust" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand distrust" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand distrust" -s y -l yes -d 'Distrust all revisions without asking'
complete -c backy -n "__fish_backy_using_subcommand distrust" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand distrust" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c backy -n "__fish_backy_using_subcommand distrust" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand protect" -s r -l revision -d 'The revision' -r
complete -c backy -n "__fish_backy_using_subcommand protect" -l reason -d 'Why (shown by status and expire --dry-run)' -r
complete -c backy -n "__fish_backy_using_subcommand protect" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand protect" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand protect" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand protect" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand protect" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand unprotect" -s r -l revision -d 'The revision' -r
complete -c backy -n "__fish_backy_using_subcommand unprotect" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand unprotect" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand unprotect" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand unprotect" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand unprotect" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand reshare" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand reshare" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand reshare" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand reshare" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c backy -n "__fish_backy_using_subcommand reshare" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand export-diff" -s r -l revision -d 'The revision the image is to hold afterwards' -r
complete -c backy -n "__fish_backy_using_subcommand export-diff" -l from -d 'The revision the image holds now (its snapshot backy-<id> must exist)' -r
complete -c backy -n "__fish_backy_using_subcommand export-diff" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand export-diff" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand export-diff" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand export-diff" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c backy -n "__fish_backy_using_subcommand export-diff" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand scheduler" -s c -l config -d 'The scheduler configuration' -r -F
complete -c backy -n "__fish_backy_using_subcommand scheduler" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand scheduler" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand scheduler" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand scheduler" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand scheduler" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand check" -s c -l config -d 'The scheduler configuration' -r -F
complete -c backy -n "__fish_backy_using_subcommand check" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand check" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand check" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand check" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand check" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand expire" -s c -l config -d 'The scheduler configuration that holds the job\'s schedule' -r -F
complete -c backy -n "__fish_backy_using_subcommand expire" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand expire" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand expire" -l dry-run -d 'Show, per revision, which tag keeps it or why it goes, and how much space the deletions free; change nothing'
complete -c backy -n "__fish_backy_using_subcommand expire" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand expire" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand expire" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -s H -l host -d 'Address to listen on (a non-loopback address gets a warning: NBD has no authentication)' -r
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -s p -l port -d 'TCP port (0 picks a free port; the log says which)' -r
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -l socket -d 'Listen on this Unix socket instead of TCP' -r -F
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -l max-connections -d 'Connections served at once; more are refused with a message' -r
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -l overlay -d 'Make exports writable through a throw-away reflink overlay (so a filesystem with a dirty journal can be mounted); the revision never changes'
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c backy -n "__fish_backy_using_subcommand nbd-server" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand send" -s r -l revision -d 'The last revision to send (default: the newest)' -r
complete -c backy -n "__fish_backy_using_subcommand send" -l base -d 'The revision the target holds already (the stream continues from it); default: none, the first revision is sent whole. Empty means none' -r
complete -c backy -n "__fish_backy_using_subcommand send" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand send" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand send" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand send" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c backy -n "__fish_backy_using_subcommand send" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand receive" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand receive" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand receive" -l dry-run -d 'Check the whole stream and say what would be received; change nothing'
complete -c backy -n "__fish_backy_using_subcommand receive" -l have -d 'Print the complete revisions held (ids and manifest digests) as JSON and read no stream'
complete -c backy -n "__fish_backy_using_subcommand receive" -l newest -d 'With --have: print only the newest revision\'s id (empty if none), for `send --base`'
complete -c backy -n "__fish_backy_using_subcommand receive" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand receive" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c backy -n "__fish_backy_using_subcommand receive" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand completions" -s l -l logfile -d 'Append log lines to this file (reopened after logrotate); default: stderr' -r -F
complete -c backy -n "__fish_backy_using_subcommand completions" -s b -l backupdir -d 'The job directory' -r -F
complete -c backy -n "__fish_backy_using_subcommand completions" -s v -l verbose -d 'Include diagnostic (debug) messages in the log'
complete -c backy -n "__fish_backy_using_subcommand completions" -s h -l help -d 'Print help'
complete -c backy -n "__fish_backy_using_subcommand completions" -s V -l version -d 'Print version'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "init" -d 'Create a job directory and its config (refused if a config exists)'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "backup" -d 'Make one new revision'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "restore" -d 'Copy a revision to a file, a block device, or - (stdout)'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "find" -d 'Print the absolute path of a revision\'s image'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "status" -d 'Show all revisions'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "verify" -d 'Check revisions against their checksum manifests'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "forget" -d 'Delete one revision'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "distrust" -d 'Mark revisions distrusted: the next backup compares the whole source against such a parent instead of trusting its checksums'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "protect" -d 'Protect a revision: retention never deletes it, and forget refuses it without --force'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "unprotect" -d 'Hand a protected revision back to retention'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "reshare" -d 'After a plain copy of the job directory (cp, rsync): share each revision\'s unchanged blocks with its parent again'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "export-diff" -d 'Write an `rbd export-diff` (v1) stream that takes an RBD image from one revision to another, to stdout, for `rbd import-diff - POOL/IMAGE`'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "scheduler" -d 'Run the scheduler daemon in the foreground'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "check" -d 'Nagios check of all jobs (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "expire" -d 'Apply the job\'s retention rules now (the scheduler does this after each run)'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "nbd-server" -d 'Serve the job\'s revisions to NBD clients (nbd-client, qemu-img, nbdcopy, nbdfuse)'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "send" -d 'Write revisions to stdout as one stream of the blocks that changed, for `receive`'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "receive" -d 'Read a `send` stream from stdin into this job (created if missing)'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "completions" -d 'Print a shell completion script'
complete -c backy -n "__fish_backy_using_subcommand help; and not __fish_seen_subcommand_from init backup restore find status verify forget distrust protect unprotect reshare export-diff scheduler check expire nbd-server send receive completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
