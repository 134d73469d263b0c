(function(){
var lb=document.getElementById('lb'),li=lb.querySelector('img'),lc=lb.querySelector('.cap'),cur=null;
function show(f){cur=f;var t=f.querySelector('img.thumb');
 if(t){li.src=t.getAttribute('data-full')||t.getAttribute('src');li.hidden=false}else{li.hidden=true;li.removeAttribute('src')}
 lc.textContent=f.getAttribute('data-caption')+(t&&!t.getAttribute('data-full')?' (thumbnail: no larger preview embedded for this group)':'');
 lb.hidden=false}
function hide(){lb.hidden=true;li.removeAttribute('src');cur=null}
document.addEventListener('click',function(e){var f=e.target.closest('figure.tile');
 if(f){show(f);return}if(!lb.hidden)hide()});
document.addEventListener('keydown',function(e){if(lb.hidden)return;
 if(e.key==='Escape'){hide();return}
 if(e.key==='ArrowRight'||e.key==='ArrowLeft'){var ts=Array.prototype.slice.call(cur.closest('section').querySelectorAll('figure.tile'));
  var i=ts.indexOf(cur)+(e.key==='ArrowRight'?1:-1);if(i>=0&&i<ts.length)show(ts[i]);e.preventDefault()}});
Array.prototype.forEach.call(document.querySelectorAll('table.heat'),function(t){
 var out=t.parentNode.parentNode.querySelector('.readout');
 t.addEventListener('mouseover',function(e){var c=e.target.closest('td');if(!c)return;
  var row=c.parentNode.rowIndex,col=c.cellIndex,r=t.rows[row].cells[0],k=t.rows[0].cells[col];
  out.textContent='P('+r.title+' better than '+k.title+') = '+Number(c.getAttribute('data-p')).toFixed(4)});});
})();
