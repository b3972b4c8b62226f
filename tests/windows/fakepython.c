/* A stand-in for a venv's python.exe under Wine, for the tests of launch/auto_train.bat.
 *
 * Built by the test fixture (never committed as a binary):
 *     x86_64-w64-mingw32-gcc -municode -O2 -s -static -o python.exe fakepython.c
 *
 * It appends one line per call to %FAKEPY_LOG%: the command line, VIRTUAL_ENV and the current directory. Then it
 * acts by the aegis_ckpt subcommand it was given (python -m aegis_ckpt SUBCOMMAND ...):
 *     preflight, run, notify   print a line, exit with %FAKEPY_RC_PREFLIGHT% / %FAKEPY_RC_RUN% / %FAKEPY_RC_NOTIFY%
 *     -c CODE                  print %FAKEPY_STDOUT_C% (the timestamp the real one would print), exit 0
 *     launcher --log-dir CONFIG print %FAKEPY_LOG_DIR% and exit 0 when set (the run's log folder), else exit 2
 *     --version                print a version, exit 0
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <wchar.h>

static int env_int(const wchar_t *name, int fallback) {
    wchar_t buf[32];
    if (!GetEnvironmentVariableW(name, buf, 32)) return fallback;
    return _wtoi(buf);
}

int wmain(int argc, wchar_t **argv) {
    wchar_t log[MAX_PATH], ve[MAX_PATH] = L"", cwd[MAX_PATH] = L"", out[256] = L"";
    const wchar_t *sub = L"";
    int i;
    GetEnvironmentVariableW(L"VIRTUAL_ENV", ve, MAX_PATH);
    GetCurrentDirectoryW(MAX_PATH, cwd);
    if (GetEnvironmentVariableW(L"FAKEPY_LOG", log, MAX_PATH)) {
        FILE *f = _wfopen(log, L"a");
        if (f) {
            fwprintf(f, L"cmdline=%ls | VIRTUAL_ENV=%ls | cwd=%ls\n", GetCommandLineW(), ve, cwd);
            fclose(f);
        }
    }
    for (i = 1; i < argc; i++) {
        if (wcscmp(argv[i], L"-c") == 0) { sub = L"-c"; break; }
        if (wcscmp(argv[i], L"--version") == 0) { sub = L"--version"; break; }
        if (wcscmp(argv[i], L"aegis_ckpt") == 0 && i + 1 < argc) { sub = argv[i + 1]; break; }
    }
    if (wcscmp(sub, L"-c") == 0) {
        if (GetEnvironmentVariableW(L"FAKEPY_STDOUT_C", out, 256)) wprintf(L"%ls\n", out);
        return 0;
    }
    if (wcscmp(sub, L"--version") == 0) { printf("Python 3.11.9 (fake)\n"); return 0; }
    if (wcscmp(sub, L"preflight") == 0) {
        printf("[preflight] OK       disk        fake preflight line\n");
        fflush(NULL);
        return env_int(L"FAKEPY_RC_PREFLIGHT", 0);
    }
    if (wcscmp(sub, L"run") == 0) {
        printf("fake training output on stdout\n");
        fprintf(stderr, "fake training output on stderr\n");
        fflush(NULL);
        return env_int(L"FAKEPY_RC_RUN", 0);
    }
    if (wcscmp(sub, L"launcher") == 0) {  /* launcher --log-dir CONFIG: the run's log folder, if a test gives one */
        if (GetEnvironmentVariableW(L"FAKEPY_LOG_DIR", out, 256)) { wprintf(L"%ls\n", out); return 0; }
        return 2;
    }
    if (wcscmp(sub, L"notify") == 0) {
        printf("fake notify\n");
        return env_int(L"FAKEPY_RC_NOTIFY", 0);
    }
    fprintf(stderr, "fakepython: unexpected call\n");
    return 99;
}
