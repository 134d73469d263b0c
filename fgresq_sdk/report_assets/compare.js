(function(){
var views=Array.prototype.slice.call(document.querySelectorAll('.view')),imgs=views.map(function(v){return v.querySelector('img')});
var st={z:0,cx:.5,cy:.5},ref=null,zl=document.getElementById('zlevel');
function ready(){return imgs.every(function(i){return !i||i.complete})}
function base(){for(var k=0;k<imgs.length;k++){if(imgs[k]&&imgs[k].naturalWidth)return imgs[k]}return null}
function fitZ(){var b=base(),v=views[0];if(!b)return 1;return Math.min(v.clientWidth,v.clientHeight*b.naturalWidth/b.naturalHeight)}
function apply(){var b=base();views.forEach(function(v,k){var im=imgs[k];if(!im||!im.naturalWidth)return;
 var a=im.naturalHeight/im.naturalWidth,s=st.z/im.naturalWidth,tx=v.clientWidth/2-st.cx*st.z,ty=v.clientHeight/2-st.cy*st.z*a;
 im.style.transform='translate('+tx+'px,'+ty+'px) scale('+s+')'});
 if(b&&zl)zl.textContent='zoom '+(st.z/b.naturalWidth*100).toFixed(0)+'% of image A\u2019s native size'}
function fit(){st={z:fitZ(),cx:.5,cy:.5};apply()}
function zoomAt(v,mx,my,f){var b=base();if(!b)return;var a=b.naturalHeight/b.naturalWidth;
 var tx=v.clientWidth/2-st.cx*st.z,ty=v.clientHeight/2-st.cy*st.z*a,u=(mx-tx)/st.z,w=(my-ty)/(st.z*a);
 var z=Math.max(fitZ()/8,Math.min(st.z*f,b.naturalWidth*64));st.z=z;st.cx=u+(v.clientWidth/2-mx)/z;st.cy=w+(v.clientHeight/2-my)/(z*a);apply()}
function setNative(m){var b=base();if(!b)return;st.z=b.naturalWidth*m;apply()}
views.forEach(function(v){
 v.addEventListener('wheel',function(e){e.preventDefault();var r=v.getBoundingClientRect();zoomAt(v,e.clientX-r.left,e.clientY-r.top,Math.exp(-e.deltaY*0.0015))},{passive:false});
 v.addEventListener('pointerdown',function(e){ref={x:e.clientX,y:e.clientY,cx:st.cx,cy:st.cy};v.classList.add('drag');v.setPointerCapture(e.pointerId)});
 v.addEventListener('pointermove',function(e){if(!ref)return;var b=base();if(!b)return;var a=b.naturalHeight/b.naturalWidth;
  st.cx=ref.cx-(e.clientX-ref.x)/st.z;st.cy=ref.cy-(e.clientY-ref.y)/(st.z*a);apply()});
 v.addEventListener('pointerup',function(){ref=null;v.classList.remove('drag')});
 v.addEventListener('dblclick',fit)});
Array.prototype.forEach.call(document.querySelectorAll('button[data-zoom]'),function(btn){btn.addEventListener('click',function(){
 var z=btn.getAttribute('data-zoom');if(z==='fit')fit();else setNative(parseFloat(z))})});
var px=document.getElementById('pix');if(px)px.addEventListener('change',function(){views.forEach(function(v){v.classList.toggle('pix',px.checked)})});
function init(){if(!ready())return;fit();var q={};location.hash.slice(1).split('&').forEach(function(kv){var p=kv.split('=');q[p[0]]=parseFloat(p[1])});
 var b=base();if(b&&q.z>0)st.z=b.naturalWidth*q.z;if(q.cx>=0)st.cx=q.cx;if(q.cy>=0)st.cy=q.cy;apply()}
imgs.forEach(function(i){if(i)i.addEventListener('load',init)});window.addEventListener('resize',apply);
init();
})();
