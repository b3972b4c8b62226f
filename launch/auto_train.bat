@echo off
rem Unattended training launcher (Windows): double-click it, start it from Task Scheduler or the Startup folder
rem (aegis-ckpt install-autostart CONFIG sets that up), walk away, come back to a finished model.
rem
rem   launch\auto_train.bat [CONFIG] [RETRIES] [LOG_DIR]
rem
rem   CONFIG    YAML config to train             env AEGIS_CONFIG        default configs\tiny.yaml
rem   RETRIES   restarts in a row w/o progress   env AEGIS_RETRIES       default 5
rem   LOG_DIR   folder for the log files         env AEGIS_LOG_DIR       default logs
rem             first restart delay (s)          env AEGIS_BACKOFF       default 30 (doubles, at most 600)
rem             no heartbeat for (s) = hung      env AEGIS_HANG_TIMEOUT  default 1800
rem   Arguments are relative to the current folder; variables and defaults to the project folder.
rem
rem Thin on purpose: it finds Python (venv\ or .venv\ of the project, else python on PATH), writes everything to
rem LOG_DIR\auto_training_YYYYMMDD_HHMMSS.log and turns exit codes into log lines. Checks, restarts, signal
rem handling and sounds are Python (aegis-ckpt preflight / run / notify), shared with auto_train.sh.
rem
rem Exit codes: 0 finished or already finished, 2 bad input or preflight refused, 130/149 stopped on request
rem (run it again to continue), 1 (or another code) the supervisor gave up.
rem
rem Portable batch: no "&&" / "||" (Wine runs the right side always), no "timeout", no parsing of %DATE%/%TIME%
rem (locale-dependent), no substring expansion inside ( ) blocks.

setlocal EnableExtensions EnableDelayedExpansion

set "CONFIG_ARG="
if not "%~1"=="" set "CONFIG_ARG=%~f1"
set "RETRIES=%~2"
if "%RETRIES%"=="" set "RETRIES=%AEGIS_RETRIES%"
if "%RETRIES%"=="" set "RETRIES=5"
set "LOG_ARG="
if not "%~3"=="" set "LOG_ARG=%~f3"

cd /d "%~dp0.."
if errorlevel 1 goto :no_project
set "ROOT=%CD%"
set "CONFIG=%CONFIG_ARG%"
if "%CONFIG%"=="" set "CONFIG=%AEGIS_CONFIG%"
if "%CONFIG%"=="" set "CONFIG=configs\tiny.yaml"
set "LOGDIR=%LOG_ARG%"
if "%LOGDIR%"=="" set "LOGDIR=%AEGIS_LOG_DIR%"
if "%LOGDIR%"=="" set "LOGDIR=logs"
set "BACKOFF=%AEGIS_BACKOFF%"
if "%BACKOFF%"=="" set "BACKOFF=30"
set "HANG=%AEGIS_HANG_TIMEOUT%"
if "%HANG%"=="" set "HANG=1800"

rem ---- Python: the project's venv, else python on PATH -----------------------------------------------------
set "VENV="
if exist "venv\Scripts\activate.bat" set "VENV=venv"
if not defined VENV if exist ".venv\Scripts\activate.bat" set "VENV=.venv"
if defined VENV call "%VENV%\Scripts\activate.bat"
rem The full path, not "python": a venv's python.exe starts the base interpreter, and a child started as
rem "python" from there would be found next to that interpreter, outside the venv.
set "PY=python"
if defined VENV if exist "%ROOT%\%VENV%\Scripts\python.exe" set "PY=%ROOT%\%VENV%\Scripts\python.exe"
set "HAVE_PY=1"
"%PY%" --version >nul 2>&1
if errorlevel 1 set "HAVE_PY="

rem ---- log file: a locale-independent timestamp (python, else wmic, else PowerShell) ----------------------
set "TS="
rem "call" keeps cmd from stripping the quotes of a quoted program path; no "%" in the code: call expands it.
if defined HAVE_PY for /f "usebackq delims=" %%T in (`call "%PY%" -c "import time; t=time.localtime(); print(f'{t.tm_year:04}{t.tm_mon:02}{t.tm_mday:02}_{t.tm_hour:02}{t.tm_min:02}{t.tm_sec:02}')" 2^>nul`) do set "TS=%%T"
set "RAW="
if not defined TS for /f "skip=1 tokens=1 delims=." %%I in ('wmic os get localdatetime 2^>nul') do if not defined RAW set "RAW=%%I"
if defined RAW set "TS=%RAW:~0,8%_%RAW:~8,6%"
if not defined TS for /f "delims=" %%P in ('powershell -NoProfile -Command "Get-Date -Format yyyyMMdd_HHmmss" 2^>nul') do set "TS=%%P"
if not defined TS set "TS=unknown-time_%RANDOM%"
if not exist "%LOGDIR%\" mkdir "%LOGDIR%"
if not exist "%LOGDIR%\" goto :no_logdir
set "LOG=%LOGDIR%\auto_training_%TS%.log"
if exist "%LOG%" set "LOG=%LOGDIR%\auto_training_%TS%_%RANDOM%.log"

call :say "project: %ROOT%"
call :say "config: %CONFIG%, retries: %RETRIES%, backoff: %BACKOFF% s, hang timeout: %HANG% s"
call :say "log: %LOG%"
echo Training output goes to the log file; follow it with: powershell Get-Content -Wait "%LOG%"
if defined VENV call :say "activated %VENV%\"
if not defined HAVE_PY goto :no_python
if not defined VENV call :say "no venv\ or .venv\ in %ROOT%: using python from PATH"

rem ---- preflight ------------------------------------------------------------------------------------------
call :say "preflight"
"%PY%" -m aegis_ckpt preflight "%CONFIG%" >>"%LOG%" 2>&1
set "RC=%ERRORLEVEL%"
if "%RC%"=="3" goto :already_finished
if not "%RC%"=="0" goto :preflight_refused

rem ---- training under the supervisor (restarts with backoff, hang detection, Ctrl+C forwarding) -----------
call :say "training: aegis-ckpt run -- aegis-ckpt train %CONFIG%"
"%PY%" -m aegis_ckpt run --max-restarts %RETRIES% --backoff %BACKOFF% --backoff-max 600 --hang-timeout %HANG% -- "%PY%" -m aegis_ckpt train "%CONFIG%" >>"%LOG%" 2>&1
set "RC=%ERRORLEVEL%"
if "%RC%"=="0" goto :finished
if "%RC%"=="2" goto :bad_input
if "%RC%"=="130" goto :stopped
if "%RC%"=="143" goto :stopped
if "%RC%"=="149" goto :stopped
if "%RC%"=="-1073741510" goto :stopped
goto :gave_up

:finished
call :say "FINISHED: training finished (exit 0)"
"%PY%" -m aegis_ckpt notify finished --config "%CONFIG%" --message "training finished" >>"%LOG%" 2>&1
exit /b 0

:already_finished
call :say "already finished: nothing to do (delete the run's .aegis\completed.json to train again)"
exit /b 0

:preflight_refused
call :say "ERROR: preflight refused to start (exit %RC%): see the lines above"
"%PY%" -m aegis_ckpt notify failed --config "%CONFIG%" --message "preflight refused to start" >>"%LOG%" 2>&1
exit /b %RC%

:bad_input
call :say "ERROR: bad input (exit 2): fix the config or command, see the lines above; not retried"
"%PY%" -m aegis_ckpt notify failed --config "%CONFIG%" --message "bad input" >>"%LOG%" 2>&1
exit /b 2

:stopped
call :say "stopped on request (exit %RC%): not restarted; run this again to continue from the newest checkpoint"
exit /b %RC%

:gave_up
call :say "ERROR: training failed and the supervisor gave up after %RETRIES% restart(s) in a row (exit %RC%); the newest committed checkpoint is kept: run this again to continue"
"%PY%" -m aegis_ckpt notify failed --config "%CONFIG%" --message "gave up" >>"%LOG%" 2>&1
exit /b %RC%

:no_python
call :say "ERROR: no venv\ or .venv\ in %ROOT% and no python on PATH. Create one in the project folder:"
call :say "ERROR:   py -m venv .venv"
call :say "ERROR:   .venv\Scripts\pip install -e ."
exit /b 2

:no_project
echo ERROR: cannot change to the project folder %~dp0..
exit /b 2

:no_logdir
echo ERROR: cannot create the log folder %LOGDIR%
exit /b 2

rem ---- one timestamped line to the console and the log (delayed expansion keeps & > ( ) in paths literal) --
:say
set "LINE=%DATE% %TIME% [auto_train] %~1"
echo !LINE!
>>"%LOG%" echo !LINE!
exit /b 0
