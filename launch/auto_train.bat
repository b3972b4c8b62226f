@echo off
rem Unattended training launcher (Windows): double-click it, start it from Task Scheduler or the Startup folder
rem (aegis-ckpt install-autostart CONFIG sets that up), walk away, come back to a finished model.
rem
rem   launch\auto_train.bat [CONFIG] [RETRIES] [LOG_DIR]
rem
rem   CONFIG    YAML config to train             env AEGIS_CONFIG        default configs\tiny.yaml
rem   RETRIES   restarts in a row w/o progress   env AEGIS_RETRIES       default 5
rem   LOG_DIR   folder for the log files         env AEGIS_LOG_DIR       default OUTPUT_DIR\logs (the run's)
rem             first restart delay (s)          env AEGIS_BACKOFF       default 30 (doubles, at most 600)
rem             no heartbeat for (s) = hung      env AEGIS_HANG_TIMEOUT  default 1800
rem   Arguments are relative to the current folder; variables and defaults to the project folder.
rem
rem The project folder is the one above this file's folder (launch\ of a checkout, or the folder
rem "aegis-ckpt launcher --write DIR" wrote to).
rem
rem Thin on purpose: it finds Python (venv\ or .venv\ of the project, else python on PATH), writes everything to
rem LOG_DIR\auto_training_YYYYMMDD_HHMMSS.log and turns exit codes into log lines. Checks, restarts, signal
rem handling and sounds are Python (aegis-ckpt preflight / run / notify), shared with auto_train.sh. Without
rem LOG_DIR the log goes next to the checkpoints, in the logs\ folder of the config's training.output_dir (Python
rem reads it: aegis-ckpt launcher --log-dir CONFIG), or to logs\ of the project when the config cannot be read.
rem
rem Exit codes: 0 finished or already finished, 2 bad input or preflight refused, 130/149 stopped on request
rem (run it again to continue), 1 (or another code) the supervisor gave up.
rem
rem Portable batch: no "&&" / "||" (Wine runs the right side always), no "timeout", no parsing of %DATE%/%TIME%
rem (locale-dependent), no substring expansion inside ( ) blocks.
rem
rem Hostile paths and values: delayed expansion stays OFF (it would eat every "!" of a path); a path is expanded
rem once, always inside quotes (so & ^ ( ) are literal), and never through "call" (which would expand a "%" in it
rem a second time); messages reach :say through the MSG_LINE variable, not as arguments. The numbers are checked to
rem be digits only before they are used, so a value like "5 & calc" is refused, never run.

setlocal EnableExtensions DisableDelayedExpansion

set "CONFIG_ARG="
if not "%~1"=="" set "CONFIG_ARG=%~f1"
set "RETRIES=%~2"
if not defined RETRIES call :env_number AEGIS_RETRIES RETRIES 5
if errorlevel 1 goto :bad_number
set "LOG_ARG="
if not "%~3"=="" set "LOG_ARG=%~f3"

cd /d "%~dp0.."
if errorlevel 1 goto :no_project
set "ROOT=%CD%"
set "CONFIG=%CONFIG_ARG%"
if not defined CONFIG call :read_env AEGIS_CONFIG CONFIG
if not defined CONFIG set "CONFIG=configs\tiny.yaml"
set "LOGDIR=%LOG_ARG%"
if not defined LOGDIR call :read_env AEGIS_LOG_DIR LOGDIR
call :env_number AEGIS_BACKOFF BACKOFF 30
if errorlevel 1 goto :bad_number
call :env_number AEGIS_HANG_TIMEOUT HANG 1800
if errorlevel 1 goto :bad_number
call :check_number RETRIES
if errorlevel 1 goto :bad_number
call :check_number BACKOFF
if errorlevel 1 goto :bad_number
call :check_number HANG
if errorlevel 1 goto :bad_number

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
rem The default log folder: logs\ of the run's output dir. Python reads it from the config and writes it to a
rem file that "set /p" reads back as it is (no for /f: its command line would need "call", which expands a "%"
rem in the config path a second time). Else, or when it cannot be created: logs\ of the project.
set "LOG_NOTE="
if not defined LOGDIR if defined HAVE_PY call :default_logdir
if not defined LOGDIR set "LOG_NOTE=the run's output dir could not be read from the config or is not writable: logging to logs\ of the project"
if not defined LOGDIR set "LOGDIR=logs"
if not exist "%LOGDIR%\" mkdir "%LOGDIR%"
if not exist "%LOGDIR%\" goto :no_logdir
set "LOG=%LOGDIR%\auto_training_%TS%.log"
if exist "%LOG%" set "LOG=%LOGDIR%\auto_training_%TS%_%RANDOM%.log"

set "MSG_LINE=project: %ROOT%"
call :say
set "MSG_LINE=config: %CONFIG%, retries: %RETRIES%, backoff: %BACKOFF% s, hang timeout: %HANG% s"
call :say
set "MSG_LINE=log: %LOG%"
call :say
if defined LOG_NOTE call :say "%LOG_NOTE%"
set "MSG_LINE=Training output goes to the log file; follow it with: powershell Get-Content -Wait "%LOG%""
call :echo_msg
if defined VENV call :say "activated %VENV%\"
if not defined HAVE_PY goto :no_python
set "MSG_LINE=no venv\ or .venv\ in %ROOT%: using python from PATH"
if not defined VENV call :say

rem ---- preflight ------------------------------------------------------------------------------------------
call :say "preflight"
"%PY%" -m aegis_ckpt preflight "%CONFIG%" >>"%LOG%" 2>&1
set "RC=%ERRORLEVEL%"
if "%RC%"=="3" goto :already_finished
if not "%RC%"=="0" goto :preflight_refused

rem ---- training under the supervisor (restarts with backoff, hang detection, Ctrl+C forwarding) -----------
set "MSG_LINE=training: aegis-ckpt run -- aegis-ckpt train %CONFIG%"
call :say
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
call :say "already finished: nothing to do (raise training.max_steps in the config to train further)"
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
set "MSG_LINE=ERROR: no venv\ or .venv\ in %ROOT% and no python on PATH. Create one in the project folder:"
call :say
call :say "ERROR:   py -m venv .venv"
call :say "ERROR:   .venv\Scripts\pip install -e ."
exit /b 2

:no_project
set "MSG_LINE=ERROR: cannot change to the project folder %~dp0.."
call :echo_msg
exit /b 2

:no_logdir
set "MSG_LINE=ERROR: cannot create the log folder %LOGDIR%"
call :echo_msg
exit /b 2

:bad_number
set "MSG_LINE=ERROR: RETRIES (argument 2 or AEGIS_RETRIES), AEGIS_BACKOFF and AEGIS_HANG_TIMEOUT must be whole numbers of digits only"
call :echo_msg
exit /b 2

rem ---- LOGDIR = logs\ of the config's output dir, if Python can read it and the folder can be created ----------
:default_logdir
set "LOGDIR_FILE=%TEMP%\aegis-ckpt-logdir-%RANDOM%%RANDOM%.txt"
"%PY%" -m aegis_ckpt launcher --log-dir "%CONFIG%" >"%LOGDIR_FILE%" 2>nul
if errorlevel 1 goto :default_logdir_done
set /p LOGDIR=<"%LOGDIR_FILE%"
if not defined LOGDIR goto :default_logdir_done
if not exist "%LOGDIR%\" mkdir "%LOGDIR%" >nul 2>&1
if not exist "%LOGDIR%\" set "LOGDIR="
:default_logdir_done
del "%LOGDIR_FILE%" >nul 2>&1
exit /b 0

rem ---- copy environment variable %1 into variable %2 without expanding it on a command line --------------------
rem (a quote in the value could otherwise end the quoted string, and "& ..." after it would run)
:read_env
set "%~2="
if not defined %~1 exit /b 0
for /f "tokens=1* delims==" %%A in ('set %~1') do if /i "%%A"=="%~1" set "%~2=%%B"
exit /b 0

rem ---- variable %2 = environment variable %1 if that is a plain number (checked before it is copied), else %3 --
:env_number
set "%~2=%~3"
if not defined %~1 exit /b 0
call :check_number %~1
if errorlevel 1 exit /b 1
call :read_env %~1 %~2
exit /b 0

rem ---- errorlevel 1 unless the variable named %1 holds a whole number >= 0 written plainly ("5", not "05") ---
rem Its value is read with delayed expansion, after the line was parsed, so & | < > " in it stay plain characters;
rem "set /a" only computes (it never runs a command) and the result must read exactly like the value.
:check_number
setlocal EnableDelayedExpansion
set "VALUE=!%~1!"
if not defined VALUE exit /b 1
set "N="
set /a "N=!VALUE!" >nul 2>&1
if not "!N!"=="!VALUE!" exit /b 1
if !N! LSS 0 exit /b 1
exit /b 0

rem ---- one timestamped line to the console and the log: the text is MSG_LINE (or, for fixed text, argument 1) --
rem The value is printed through a FOR variable ("set MSG_LINE" lists it as MSG_LINE=...): a FOR variable is
rem substituted after the line was parsed, so "!", "%", "&", "(" and quotes in it are printed as they are.
:say
if not "%~1"=="" set "MSG_LINE=%~1"
for /f "tokens=1* delims==" %%A in ('set MSG_LINE') do (
  echo.%DATE% %TIME% [auto_train] %%B
  >>"%LOG%" echo.%DATE% %TIME% [auto_train] %%B
)
exit /b 0

:echo_msg
for /f "tokens=1* delims==" %%A in ('set MSG_LINE') do echo.%%B
exit /b 0
